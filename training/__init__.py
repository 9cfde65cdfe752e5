"""Fine-tuning the shipped models on the forms the service stores (issue 19). Not imported by the service.

* :mod:`training.data` — the training images (scikit-image's data, Debian's ``sway-backgrounds``, ``desktop-base``
  and ``gimp-data``, generated images; never the held-out wallpaper packages) and the (stored, original) pairs,
  made with the service's own downscale and encoders.
* :mod:`training.train` — fine-tunes SPAN from the shipped ncnn weights (PyTorch), with checkpoints and resume.
* :mod:`training.export` — writes the fine-tuned weights as an ncnn ``.bin`` next to the stock ``.param``, which
  every runtime of the engine loads (ncnn, PyTorch, ONNX), and the model card.

Needs PyTorch (``/work/torchenv`` here; the ``gpu`` extra); the data module alone does not.
"""
