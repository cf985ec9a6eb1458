"""Live sync over WebSocket: one hub per process fans committed changes out to sessions."""
