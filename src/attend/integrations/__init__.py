"""attend inside other libraries, one module per integration, named as it registers:

- :mod:`attend.integrations.hf`: ``attn_implementation="attend"`` for Hugging Face
  ``transformers`` (extra ``hf``); importing it registers ``"attend"``.

Integrations are clients of :func:`attend.attention`, like :mod:`attend.nn`. None is
imported here: importing one is what registers it.
"""
