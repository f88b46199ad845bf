"""The bundled tiny Gemma's pipeline: how ``data/tiny-gemma`` is made and measured.

    tables.py              the word tables and sentence frames of the synthetic corpus
    corpus.py              the document generators (deterministic, with a held-out split)
    tokenizer_training.py  the Gemma-style SentencePiece tokenizer trained on the corpus
    train.py               the training loop and checkpoint writer (python -m gemma_lab.tiny.train)
    card.py                the model card README.md and loss curve
    evaluate.py            the card's figures, through interp and generation (python -m gemma_lab.tiny.evaluate)
    sae.py                 the bundled SAE and transcoder of data/tiny-sae (python -m gemma_lab.tiny.sae)

It sits above the library: it imports the model, loading, interp and generation; nothing in the
library imports it (the command line reaches ``train.py`` lazily, for ``gemma-lab train-tiny``).
"""
