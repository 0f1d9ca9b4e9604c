// Kernel pairs (forward/backward) over flat buffers; see each file.
