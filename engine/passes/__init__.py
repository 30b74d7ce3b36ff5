"""Model passes: probe images through targets (hooked, pooled) and through the dissector."""
