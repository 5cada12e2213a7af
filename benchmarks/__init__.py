"""Benchmarks and the fleet-run generator (a package so tests can import benchmarks.fleet_run)."""
