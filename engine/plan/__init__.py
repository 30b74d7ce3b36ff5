"""Planning: a checked study becomes a typed plan of declarations and dissections (the executor's only input)."""
