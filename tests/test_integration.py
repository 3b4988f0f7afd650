"""A word-language-model style training loop: swapping in rnnfast gives the same losses."""
import copy

import pytest
import torch
import torch.nn as nn

import rnnfast

VOCAB, EMB, HID = 17, 6, 7


class LM(nn.Module):
    def __init__(self, rnn_type):
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, EMB)
        if rnn_type == "LSTM":
            self.rnn = nn.LSTM(EMB, HID, num_layers=2)
        elif rnn_type == "GRU":
            self.rnn = nn.GRU(EMB, HID, num_layers=2)
        else:
            self.rnn = nn.RNN(EMB, HID, num_layers=2, nonlinearity=rnn_type.split("_")[1].lower())
        self.decoder = nn.Linear(HID, VOCAB)
        self.rnn_type = rnn_type

    def forward(self, tokens, hidden):
        emb = self.encoder(tokens)
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(output).view(-1, VOCAB), hidden

    def init_hidden(self, bsz):
        w = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (w.new_zeros(2, bsz, HID), w.new_zeros(2, bsz, HID))
        return w.new_zeros(2, bsz, HID)


def _repackage(h):
    return tuple(_repackage(v) for v in h) if isinstance(h, tuple) else h.detach()


def _train(model, data, bptt=4, lr=0.5, steps=8):
    model.train()
    crit = nn.CrossEntropyLoss()
    hidden = model.init_hidden(data.shape[1])
    losses = []
    for step in range(steps):
        i = (step * bptt) % (data.shape[0] - bptt - 1)
        src, tgt = data[i:i + bptt], data[i + 1:i + 1 + bptt].reshape(-1)
        hidden = _repackage(hidden)
        model.zero_grad()
        out, hidden = model(src, hidden)
        loss = crit(out, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_training_loop_matches_torch(rnn_type):
    torch.manual_seed(0)
    ref = LM(rnn_type).double()
    new = rnnfast.convert(copy.deepcopy(ref))
    start = copy.deepcopy(ref.rnn)
    assert type(new.rnn) is getattr(rnnfast, rnn_type.split("_")[0])
    data = torch.randint(0, VOCAB, (30, 3), generator=torch.Generator().manual_seed(1))
    l_ref = _train(ref, data)
    l_new = _train(new, data)
    assert l_new == pytest.approx(l_ref, abs=1e-9, rel=0)
    for (n, a), (_, b) in zip(ref.named_parameters(), new.named_parameters()):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0, msg=n)
    # and training actually moved the weights
    moved = [not torch.equal(a, b) for a, b in zip(new.rnn.parameters(), start.parameters())]
    assert all(moved)
