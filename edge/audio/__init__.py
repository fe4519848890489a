"""Client audio into the 16-bit mono PCM the pipeline takes: one decoder for every API.

A leaf: it imports nothing of the edge. Channel policy, the same on every API and for every container: audio
with several channels is mixed down to one (the mean of the channels, rounded), so a stereo recording with a
speaker on each side keeps both; unless the session is multichannel (`channels` > 1 given to the decoder), when
the channels are kept, interleaved, for the edge to split into one pipeline each (`pcm.split_channels`).
"""
