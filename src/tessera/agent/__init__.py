"""The node agent: the device plugin, MIG manager, feature labels, GPU drain and metrics,
composed in one asyncio process and steered through the node's labels and annotations."""
