// The receipt's 列印 button (no inline script: the CSP allows none).
document.getElementById('print')?.addEventListener('click', () => window.print());
