"""Engines that run nets: pycaffe on this machine (cpu.py); the timing program rebirth-time on this
machine, a phone (adb), a board (ssh) or under qemu (remote.py)."""
