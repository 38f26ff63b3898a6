from .test_loss import ClsTestLoss, SegTestLoss

__all__ = ['ClsTestLoss', 'SegTestLoss']
