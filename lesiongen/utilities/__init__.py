"""Small shared helpers: errors, atomic writes, JSON, process pools, logging."""
