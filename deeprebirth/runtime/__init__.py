"""Runtime: engines that run nets, always checked against Caffe, the reference. ``pycaffe`` (Caffe
nets in this process), ``isolate`` (Caffe work in a child process, so an abort is an error, not a
crash), ``verify`` (two nets run side by side, every shared blob compared), ``devices/`` (where a
benchmark runs: this machine through pycaffe, or the timing program rebirth-time on this machine, a
phone over adb, a board over ssh, under qemu) and ``bench`` (measure, summarise, plot).
Imports only the base (caffe, graph)."""
