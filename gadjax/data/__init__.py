"""Host-side data: prompt sources, teacher text, and the grain pipeline to padded numpy batches.

Submodules are imported explicitly (``gadjax.data.rows`` has no heavy dependencies).
"""
