"""The output protocol: the output folder's layout, its commits and their recovery, the lease, atomic storage."""
