"""Recipes (layer 5): supervised fine-tuning and its datasets.

The default task generators live in the private ``_tasks`` module for now; the recipes
package will export its public names here.
"""
