"""Payments: a provider interface, the MIPS-style aggregator (MCB Juice, my.t money, cards),
cash on delivery, and a stand-in gateway that speaks the same protocol for tests and demos."""
