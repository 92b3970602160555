"""Framework adapters, shipped as ``traceguard.integrations``.

Each module imports its framework lazily and names the extra to install when it is missing.
"""
