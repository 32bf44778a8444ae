"""resilfs: files in the RAM of remote memory appliances, kept safe by resiliency sets."""

__version__ = "0.1.0"
