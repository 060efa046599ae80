"""rerankrt.export — build time: source CrossEncoder → verified ONNX graphs → artifact directory.

Depends on torch, transformers and onnx (the ``[export]`` extra). The runtime never imports it.
"""
