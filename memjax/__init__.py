"""memjax: did the generative model copy its training patients?

Exact, streaming memorization audits of synthetic medical images, and the generative models that
the medical-imaging literature audits, in JAX.
"""

__version__ = "0.1.0"
