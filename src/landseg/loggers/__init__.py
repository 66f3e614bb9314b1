"""landseg.loggers"""
