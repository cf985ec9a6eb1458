"""Fresh Roots sync server: the Starlette application, its routes and command line."""
