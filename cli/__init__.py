"""What the commands share: their configuration flags (args), starting their ranks with torchrun
(launch), and the main of the commands whose ranks need no accelerator (ranks)."""
