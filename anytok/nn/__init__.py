"""Shared layers: causal / weight-norm convs, SEANet, 2D ResNet and causal 3D conv stacks."""
