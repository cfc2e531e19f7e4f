"""Multi-rank correctness and independence check of DWDP against a float64 reference."""
