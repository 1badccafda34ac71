"""Format edges: one artifact in, one artifact out, named by the edge it crosses."""
