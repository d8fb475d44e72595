"""Image sources and data sets. Imports nothing else of memjax."""

# The mesh axis that batches and training sets are split over (memjax.parallel's meshes).
DATA_AXIS = "data"
