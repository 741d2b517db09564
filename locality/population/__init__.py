"""population"""
