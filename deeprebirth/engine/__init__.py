"""Engines that run nets: pycaffe on this machine now; an Android device (adb) later."""
