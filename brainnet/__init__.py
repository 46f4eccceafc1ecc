"""brainnet: stream brainprep patch stores into a 3D U-Net; train, evaluate, segment scans."""

__version__ = "0.1.0"
