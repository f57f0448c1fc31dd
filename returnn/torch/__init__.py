"""The PyTorch engine: training, evaluation and forward loops (:mod:`returnn.torch.engine`) and what they use."""
