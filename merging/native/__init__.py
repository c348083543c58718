"""Small C kernels for the merge's hot loops, compiled with the system C compiler at first use (build.py).

Each kernel has a torch twin that stays the reference and the fallback: on a GPU, for other layouts, with
MERGELAB_NATIVE=0 or where no compiler works, callers take the torch path with the same figures.
"""
