"""The pool: the front end's side of the worker processes (queue, dispatch, supervision).

Runs in the front-end process and never imports OpenCV or numpy.
"""
