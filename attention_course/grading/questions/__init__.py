"""The graded questions, one module per chapter (or part of one): ``chNN.py``, ``chNN_topic.py``.

Every module here that defines ``QUESTIONS`` (a list of ``attention_course.grading.Question``) is
found automatically; there is no central list to edit. ``ch03.py`` is the worked example, and
the recipe is in the docstring of ``attention_course.grading``.
"""
