"""Data files shipped with the reports package (a package so that setuptools packs its *.csv)."""
