"""Runtime: how the model's steps execute (a static cache and a compiled step), not what they compute."""
