"""manu-lite: Modality-Aware Neuron Unlearning (MANU) for multimodal LLMs, small and tested."""
__version__ = "0.1.0"
