// Word-level difference of a column against the unsteered column (longest common subsequence).

export function tokenize(text) {
  return text.split(/(\s+)/).filter((t) => t.length > 0);
}

// Returns [{text, changed}] covering `other`; words of `other` outside the LCS with `base` are changed.
export function diffWords(base, other) {
  const a = tokenize(base);
  const b = tokenize(other);
  const n = a.length;
  const m = b.length;
  // dp[i][j] = LCS length of a[i:] and b[j:], rows of Uint32Array (texts are a few hundred words).
  const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      dp[i][j] = a[i] === b[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  const push = (text, changed) => {
    const last = out[out.length - 1];
    if (last && last.changed === changed) last.text += text;
    else out.push({ text, changed });
  };
  while (j < m) {
    if (i < n && a[i] === b[j]) { push(b[j], false); i++; j++; }
    else if (i < n && dp[i + 1][j] >= dp[i][j + 1]) { i++; }
    else { push(b[j], !/^\s+$/.test(b[j])); j++; }
  }
  return out;
}

// Fill `el` with `text`, marking the words that differ from `base` (null base: plain text).
export function renderDiff(el, text, base) {
  el.replaceChildren();
  if (base === null || base === undefined) {
    el.textContent = text;
    return 0;
  }
  let changedWords = 0;
  for (const part of diffWords(base, text)) {
    if (part.changed) {
      const mark = document.createElement("mark");
      mark.textContent = part.text;
      el.appendChild(mark);
      changedWords += tokenize(part.text).filter((t) => !/^\s+$/.test(t)).length;
    } else {
      el.appendChild(document.createTextNode(part.text));
    }
  }
  return changedWords;
}
