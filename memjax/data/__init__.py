"""Image sources and data sets. Imports nothing else of memjax."""
