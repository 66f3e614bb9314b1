"""landseg.tasks"""
