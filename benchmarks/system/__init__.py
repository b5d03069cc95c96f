"""Helpers of the whole-system benchmark (bench_system): processes, faults, clients."""
