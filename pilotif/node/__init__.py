"""The node side of the control plane: joining a registry, trust, peers and paths."""
