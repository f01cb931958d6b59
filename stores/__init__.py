"""The stores: voices and conversations kept as files, shared by every replica and ingress (a
shared volume on k8s). Torch-free, below both the edges (serve/) and the replicas (replica/);
they import only models' torch-free records. Import each name from its module:

    voices.py         Voice, VoiceStore: a speaker id plus reference clips with transcripts
    conversations.py  Conversation, ConversationStore: turns in order, bounds, the turn lock
    settings.py       StoreSettings: the directories and bounds, one record
"""
