"""Command-line code shared by the commands: flags (args), torchrun (launch), CPU ranks (ranks)."""
