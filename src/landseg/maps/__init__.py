"""Map products written from predictions: Cloud Optimized GeoTIFFs, class styles (QGIS
``.qml``, colour tables) and vectors."""
