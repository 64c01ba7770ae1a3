"""The host side: stage 2, the memory manager with swap, APF delivery, and the poll loop."""
