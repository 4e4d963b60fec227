"""How corral's processes talk: the channel (JSON lines and descriptors) and its messages."""
