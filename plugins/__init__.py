"""Built-in p2pwall detectors, installed as the ``p2pwall_plugins`` package.

Each sub-package is registered through the ``p2pwall.detectors`` entry-point group,
exactly like a third-party detector.
"""
