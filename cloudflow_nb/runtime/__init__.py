"""Engines that execute plans: the local reference interpreter and the Dask serving runtime."""
