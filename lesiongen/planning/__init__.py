"""Planning: target spacing, normalisation, patch and batch sizes, topologies, sphere priors."""
