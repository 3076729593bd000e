"""Torch modules: the ZiPo network, the sparse first layer, batch norm pooled over processes."""
